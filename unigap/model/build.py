"""Build a tiny Janus (config, tokenizer, processor) offline, from a word list.

The shipped model is a real `JanusForConditionalGeneration`: the same adapter loads it and the
Janus-Pro checkpoints. Nothing here downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer, models, pre_tokenizers, processors
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
        max_position_embeddings=256,
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


def build_tiny(words: list[str], size: TinySize = TinySize(), seed: int = 0):
    """A freshly initialised tiny Janus with its processor."""
    import torch

    tokenizer = build_tokenizer(words)
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(janus_config(tokenizer, size))
    return model, build_processor(tokenizer, size)
