"""Build a tiny Janus (config, tokenizer, processor) offline, from a word list.

The shipped model is a real `JanusForConditionalGeneration`: the same adapter loads it and the
Janus-Pro checkpoints. Nothing here downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    LlamaConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.janus.configuration_janus import JanusVisionConfig, JanusVQVAEConfig

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, IMAGE, BOI, EOI, USER, ASSISTANT]


@dataclass(frozen=True)
class TinySize:
    """Sizes of the tiny model; the constraints transformers' Janus puts on them are checked in `janus_config`."""

    image_size: int = 32
    patch_size: int = 4
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    codebook: int = 512
    code_dim: int = 8
    vq_channels: int = 32
    vq_multipliers: tuple[int, ...] = (1, 2, 2)
    max_positions: int = 256  # the prefix and every image token must fit


# Janus-Pro's layout (deepseek-community/Janus-Pro-1B and -7B): 384 px images in 16 px patches,
# 576 image tokens, a 16384-code book, a VQ that downsamples by 16; here at tiny widths.
PRO_LAYOUT = TinySize(
    image_size=384,
    patch_size=16,
    hidden=64,
    layers=1,
    heads=2,
    vision_hidden=64,
    vision_layers=1,
    codebook=16384,
    vq_multipliers=(1, 1, 2, 2, 4),
    max_positions=1024,
)
# Janus-Pro's own special tokens (DeepSeek's tokenizer); its chat markers are plain text there.
PRO_BOS, PRO_EOS, PRO_PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over `words` (split on whitespace and punctuation), adding <bos>."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def build_bpe_tokenizer(corpus: list[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer as Janus-Pro's (DeepSeek's special tokens, left padding, <bos>
    first), trained offline on `corpus` with the `tokenizers` library: any text tokenizes (bytes
    are its alphabet), frequent corpus words become single tokens."""
    specials = [PRO_BOS, PRO_EOS, PRO_PAD, IMAGE, BOI, EOI]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{PRO_BOS} $A", pair=f"{PRO_BOS} $A $B", special_tokens=[(PRO_BOS, tok.token_to_id(PRO_BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=PRO_BOS,
        eos_token=PRO_EOS,
        pad_token=PRO_PAD,
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def janus_config(tokenizer: PreTrainedTokenizerFast, size: TinySize = TinySize()) -> JanusConfig:
    downsample = 2 ** (len(size.vq_multipliers) - 1)
    if downsample != size.patch_size or size.vq_channels % 32:
        raise ValueError("VQ downsampling must equal the patch size and channels be a multiple of 32")
    n_tokens = (size.image_size // size.patch_size) ** 2
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=4 * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    vision = JanusVisionConfig(
        hidden_size=size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
        projection_dim=size.hidden,
        num_image_tokens=n_tokens,
    )
    vq = JanusVQVAEConfig(
        embed_dim=size.code_dim,
        num_embeddings=size.codebook,
        latent_channels=size.vq_channels * size.vq_multipliers[-1],
        base_channels=size.vq_channels,
        channel_multiplier=list(size.vq_multipliers),
        num_res_blocks=1,
        projection_dim=size.hidden,
        image_token_embed_dim=size.hidden,
    )
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, size: TinySize = TinySize()) -> JanusProcessor:
    # Mean/std 0.5 maps pixels to [-1, 1]: the range the VQ decoder produces, so understanding and
    # generation share one normalisation (the processor's default is CLIP's, which differs).
    image_processor = JanusImageProcessorPil(
        size={"height": size.image_size, "width": size.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    n_tokens = (size.image_size // size.patch_size) ** 2
    return JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=n_tokens)


def build_tiny(words: list[str], size: TinySize = TinySize(), seed: int = 0, tokenizer=None):
    """A freshly initialised tiny Janus with its processor (the WordLevel tokenizer over `words`
    unless `tokenizer` is given)."""
    import torch

    tokenizer = tokenizer or build_tokenizer(words)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(janus_config(tokenizer, size))
    return model, build_processor(tokenizer, size)


def build_pro_layout(corpus: list[str], seed: int = 0):
    """A randomly initialised Janus with Janus-Pro's layout (`PRO_LAYOUT`: 384 px, 576 image
    tokens, 16384 codes) and a byte-level BPE tokenizer trained on `corpus`, at tiny widths: what a
    team's own checkpoint looks like to unigap, small enough for tests on a CPU."""
    return build_tiny([], PRO_LAYOUT, seed, tokenizer=build_bpe_tokenizer(corpus))
