"""The one adapter over transformers' Janus that everything in unigap uses.

Generation, judging, training and analysis all go through these functions, so the sampler and the
teacher-forced log-probs share one layout: a left-padded text prefix ending in <begin_of_image>,
position ids counted from the attention mask (so padding never shifts a row), and image tokens
fed back through the generation embeddings. Works for the shipped tiny model and Janus-Pro alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoProcessor, DynamicCache, JanusForConditionalGeneration
from transformers.cache_utils import DynamicLayer

from unigap.config import Sampling

# The Janus-Pro chat layout; "\n" collapses to nothing in the tiny model's tokenizer.
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
KNOWN_TEXTS = 100_000  # texts whose token ids a model remembers (UnifiedModel.token_ids)


def gen_text(prompt: str) -> str:
    return f"{USER}: {prompt}\n\n{ASSISTANT}:"


def und_text(image_block: str, question: str) -> str:
    return f"{USER}: {image_block}\n{question}\n\n{ASSISTANT}:"


@dataclass
class Samples:
    """N candidates per prompt, rows ordered prompt-major (prompt 0's N, then prompt 1's ...)."""

    tokens: (
        torch.Tensor
    )  # [rows, n_image_tokens] long, on the CPU (as the images): results leave the adapter as host data
    images: np.ndarray | None  # [rows, H, W, 3] uint8
    prompt_index: list[int]
    prompts: list[str]


def row_seed(seed: int, prompt: str, k: int) -> int:
    """A per-candidate seed: a candidate does not depend on what else is in the batch."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt}\x1f{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


_MASK32 = 0xFFFF_FFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32 (Wellons, hash-prospector): a 32-bit mixer of low bias
_CODE_SALT = 0x9E3779B9  # keeps code 0's input away from 0


def mix32(x: int) -> int:
    """lowbias32 of a 32-bit int: the reference the tensor form (`_mix32`) must equal bit for bit."""
    x &= _MASK32
    x = ((x ^ (x >> 16)) * _MULTIPLIERS[0]) & _MASK32
    x = ((x ^ (x >> 15)) * _MULTIPLIERS[1]) & _MASK32
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2**32 for 32-bit values held in int64, by 16-bit halves: no product overflows int64
    (signed overflow is not something to rely on across devices)."""
    return ((((x >> 16) * m) & 0xFFFF) << 16).add_((x & 0xFFFF) * m).bitwise_and_(_MASK32)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = _mul32(x ^ (x >> 16), _MULTIPLIERS[0])
    x = _mul32(x ^ (x >> 15), _MULTIPLIERS[1])
    return x ^ (x >> 16)


def step_gumbel(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, vocab] (float32, on `keys`' device) for decoding step `step`.

    Counter-based: entry (r, v) is a function of (keys[r], step, v) alone (keys: int64 in [0, 2**63),
    e.g. `row_seed`s), so a candidate's noise does not depend on its batch, its place in it or the
    steps drawn before, and only one step's noise is ever held (memory bounded by the batch). Each
    entry hashes the three with lowbias32 (two rounds per entry) into 32 uniform bits u, strictly
    inside (0, 1), and returns -log(-log(u)). The same keys give the same bits on every device.
    """
    step_salt = mix32(step + 1)
    state = _mix32((keys & _MASK32) ^ _mix32((keys >> 32) ^ step_salt))  # [rows]: one (candidate, step)
    second = _mix32(state ^ _CODE_SALT)
    codes = _mix32(torch.arange(vocab, device=keys.device) ^ _CODE_SALT)
    bits = _mix32(_mix32(state[:, None] ^ codes) ^ second[:, None])
    u = (bits.double() + 0.5) * 2.0**-32  # float64: float32 would round the top values to 1
    return u.log_().neg_().log_().neg_().float()


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """At least float32 for softmaxes (half-precision models), never lower (float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class _ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values live in preallocated room for `capacity` positions.

    `update` writes the new states in place and returns views of the filled part, so decoding T
    tokens no longer concatenates (copies) the whole cache T times. The views hold exactly what
    `DynamicLayer` would hold, so attention sees the same numbers. Past `capacity` it falls back to
    concatenation.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int, capacity: int):
        super().__init__()
        b, h, length, d = keys.shape
        self._k = keys.new_empty(b * repeats, h, capacity, d)
        self._v = values.new_empty(b * repeats, h, capacity, values.shape[-1])
        # rows r*repeats ... r*repeats+repeats-1 are copies of row r (repeat_interleave), in one copy
        self._k.view(b, repeats, h, capacity, d)[:, :, :, :length] = keys[:, None]
        self._v.view(b, repeats, h, capacity, values.shape[-1])[:, :, :, :length] = values[:, None]
        self.device, self.is_initialized = keys.device, True
        self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        start, end = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
        if end > self._k.shape[-2]:
            return super().update(key_states, value_states, *args, **kwargs)
        self._k[:, :, start:end].copy_(key_states)
        self._v[:, :, start:end].copy_(value_states)
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values


def check_janus_folder(path: Path) -> None:
    """ValueError naming the folder unless its config.json is a Janus model's (model_type janus)."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: config.json is not valid JSON") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind != "janus":
        raise ValueError(f"{path} is not a Janus checkpoint: its config.json says model_type {kind!r}, not 'janus'")


class UnifiedModel:
    def __init__(self, model: JanusForConditionalGeneration, processor, path: str | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.path = path
        self.num_image_tokens = model.config.vision_config.num_image_tokens
        self.image_size = model.config.vision_config.image_size
        tok = self.tokenizer
        self.image_block = tok.boi_token + tok.image_token * self.num_image_tokens + tok.eoi_token
        self.boi_id = tok.convert_tokens_to_ids(tok.boi_token)
        self.special_keep = {tok.bos_token_id, self.boi_id}
        self._known_ids: dict[tuple[str, bool], list[int]] = {}

    # ------------------------------------------------------------------ load / save
    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> UnifiedModel:
        """Any transformers Janus checkpoint folder (the shipped model, Janus-Pro-1B/7B or a team's
        own) with its processor and tokenizer, which are used throughout. FileNotFoundError without
        config.json; ValueError, in one line, for a folder that is not a Janus checkpoint."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model at {path} (expected a save_pretrained folder with config.json)")
        check_janus_folder(path)
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: cannot load its processor and tokenizer ({e.__class__.__name__})") from None
        if not all(hasattr(processor, k) for k in ("tokenizer", "image_processor")):
            raise ValueError(f"{path}: its processor is a {type(processor).__name__}, not a Janus processor")
        model = JanusForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
        model.to(device).eval()
        return cls(model, processor, str(path))

    def save(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ pieces
    def _lm(self, embeds, mask, cache=None, pos=None):
        return self.model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions(mask) if pos is None else pos,
            cache=cache,
            use_cache=cache is not None,
        ).last_hidden_state

    def token_ids(self, texts: list[str], special: bool = True) -> list[list[int]]:
        """The tokenizer's ids of each text (with its special tokens when `special`), remembered: a
        training step tokenised the same prompts, questions and captions again and again, a
        twentieth of its time. Past KNOWN_TEXTS texts (a service's stream of new prompts) it starts over."""
        known = self._known_ids
        found = {t: known.get((t, special)) for t in texts}  # read once: another thread may start over meanwhile
        new = [t for t, ids in found.items() if ids is None]
        if new:
            found.update(zip(new, self.tokenizer(new, add_special_tokens=special).input_ids))
            if len(known) + len(new) > KNOWN_TEXTS:
                known.clear()
            known.update(((t, special), found[t]) for t in new)
        return [found[t] for t in texts]

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask, as the tokenizer pads them with padding_side="left"."""
        ids = self.token_ids(texts)
        width, pad = max(map(len, ids), default=0), self.tokenizer.pad_token_id
        rows = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long).view(len(ids), width)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long).view(
            len(ids), width
        )
        return rows.to(self.device), mask.to(self.device)

    def gen_prefix(
        self, prompts: list[str], guided: bool, drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask of the generation prefix; with `guided`, the unconditional rows follow.

        The unconditional prefix keeps the layout and replaces every token but <bos>/<boi> by <pad>,
        as Janus does, so the sampler and the trainer agree on what "no prompt" means. `drop` marks
        rows to make unconditional (prompt dropout when training for guidance).
        """
        ids, mask = self._tokenize([gen_text(p) + self.tokenizer.boi_token for p in prompts])
        keep = mask == 0
        for t in self.special_keep:
            keep |= ids == t
        uncond = torch.where(keep, ids, torch.full_like(ids, self.tokenizer.pad_token_id))
        if drop is not None:
            ids = torch.where(drop.to(ids.device)[:, None], uncond, ids)
        if not guided:
            return ids, mask
        return torch.cat([ids, uncond]), torch.cat([mask, mask])

    def text_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def image_embeds(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.prepare_embeddings_for_image_generation(tokens)

    @staticmethod
    def guide(logits: torch.Tensor, cfg: float) -> torch.Tensor:
        """Classifier-free guidance over [cond; uncond] rows: uncond + cfg * (cond - uncond)."""
        cond, uncond = logits.chunk(2)
        return uncond + cfg * (cond - uncond)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        n: int = 1,
        cfg: float = Sampling.cfg,
        temperature: float = Sampling.temperature,
        seed: int | Sequence[int] = 0,
        decode: bool = True,
    ) -> Samples:
        """N candidates per prompt with classifier-free guidance; temperature 0 is greedy.

        The prompt prefix is computed once and its cache shared by the N candidates. Gumbel-max noise
        is drawn on the model's device one step at a time (`step_gumbel`), keyed by each candidate's
        `row_seed`, so a candidate is the same whatever batch it is sampled in, and the noise held is
        [rows, codebook], not [rows, image tokens, codebook].
        `seed` may be one seed per prompt, so requests with different seeds can share a batch.
        """
        if n < 1:
            raise ValueError("n must be >= 1")
        seeds = [int(seed)] * len(prompts) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        guided = cfg != 1.0
        ids, mask = self.gen_prefix(prompts, guided)
        cache = DynamicCache(config=self.model.config.text_config)
        hidden = self._lm(self.text_embeds(ids), mask, cache)[:, -1]
        n_tok, width = self.num_image_tokens, ids.shape[1]
        # The candidates' cache: the prefix repeated N times, with room for the image tokens, so the
        # decoding steps write in place (no growing concatenation of keys, values or mask).
        cache.layers = [_ReservedLayer(layer.keys, layer.values, n, width + n_tok) for layer in cache.layers]
        hidden = hidden.repeat_interleave(n, 0)
        full_mask = torch.cat([mask.repeat_interleave(n, 0), mask.new_ones(mask.shape[0] * n, n_tok)], 1)
        pos = positions(full_mask[:, :width])[:, -1:]
        # A one-token step attends to every cached position that is not padding: the 4D mask that
        # transformers would build from the 2D one each step, built once (sliced per step).
        step_mask = full_mask.bool()[:, None, None, :]
        rows = len(prompts) * n
        keys = None
        if temperature > 0:  # one key per candidate; its noise is drawn step by step (step_gumbel)
            keys = [row_seed(seeds[r // n], prompts[r // n], r % n) for r in range(rows)]
            keys = torch.tensor(keys, dtype=torch.long, device=self.device)
        tokens = torch.empty(rows, n_tok, dtype=torch.long, device=self.device)
        head = self.model.model.generation_head
        for t in range(n_tok):
            logits = head(hidden)
            if guided:
                logits = self.guide(logits, cfg)
            if keys is None:
                nxt = logits.argmax(-1)
            else:
                nxt = (full_precision(logits) / temperature + step_gumbel(keys, t, logits.shape[-1])).argmax(-1)
            tokens[:, t] = nxt
            if t == n_tok - 1:
                break
            step = nxt.repeat(2) if guided else nxt
            pos = pos + 1
            hidden = self._lm(self.image_embeds(step)[:, None], step_mask[..., : width + t + 1], cache, pos)[:, -1]
        images = self.decode(tokens) if decode else None
        return Samples(tokens.cpu(), images, [r // n for r in range(rows)], list(prompts))

    def image_logits(
        self, prompts: list[str], tokens: torch.Tensor, cfg: float = 1.0, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits [B, T, V] of image tokens, laid out exactly as `sample` lays them out."""
        guided = cfg != 1.0
        ids, mask = self.gen_prefix(prompts, guided, drop)
        tokens = tokens.to(self.device)
        prev = tokens[:, :-1].repeat(2, 1) if guided else tokens[:, :-1]
        embeds = torch.cat([self.text_embeds(ids), self.image_embeds(prev)], 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], prev.shape[1])], 1)
        hidden = self._lm(embeds, mask)[:, ids.shape[1] - 1 :]
        logits = self.model.model.generation_head(hidden)
        return self.guide(logits, cfg) if guided else logits

    def image_logprobs(
        self,
        prompts: list[str],
        tokens: torch.Tensor,
        cfg: float = 1.0,
        temperature: float = 1.0,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token log-probs [B, T] of `tokens` (conditional, or CFG-combined when cfg != 1)."""
        logits = self.image_logits(prompts, tokens, cfg, drop)
        logp = F.log_softmax(full_precision(logits) / temperature, -1)
        return logp.gather(-1, tokens.to(self.device)[..., None]).squeeze(-1)

    # Images per VQ pass on CPU: the convolutions' activations for hundreds of images spill out of
    # the caches, and chunks of 32 decode about 2.5 and encode about 1.7 times as fast per image
    # (bench/vq.py). The pixels are the same; a code can differ where two codes nearly tie, since
    # the convolutions sum in another order (14 of the 330,000 tokens of a round's candidates).
    # None: one pass for everything (GPUs).
    cpu_vq_images: int | None = 32

    def _vq_chunks(self, n: int) -> list[slice]:
        step = self.cpu_vq_images if self.device.type == "cpu" and self.cpu_vq_images else max(n, 1)
        return [slice(i, i + step) for i in range(0, max(n, 1), step)]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        tokens = tokens.to(self.device)
        pixels = torch.cat(
            [self.model.decode_image_tokens(tokens[s]) for s in self._vq_chunks(len(tokens))]
        )  # [B, H, W, 3] in [-1, 1]
        return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Canonical image tokens [B, T] on the CPU, like `sample`'s, of images (uint8 [B, H, W, 3] or a list of them)."""
        pixels = self.pixel_values(images)
        tokens = [self.model.model.vqmodel.encode(pixels[s]).image_tokens for s in self._vq_chunks(len(pixels))]
        return torch.cat(tokens).view(len(pixels), self.num_image_tokens).cpu()

    # ------------------------------------------------------------------ understanding
    def pixel_values(self, images) -> torch.Tensor:
        """Normalised pixels [B, 3, H, W]; square uint8 arrays of the model's size skip PIL."""
        ip = self.processor.image_processor
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (self.image_size,) * 2:
            x = torch.from_numpy(np.array(images)).to(self.device).float().div(255).permute(0, 3, 1, 2)
            mean = torch.tensor(ip.image_mean, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(ip.image_std, device=self.device).view(1, 3, 1, 1)
            return ((x - mean) / std).to(self.model.dtype)
        from PIL import Image

        pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
        return ip(pil, return_tensors="pt").pixel_values.to(self.device, self.model.dtype)

    # Tokens per understanding forward on CPU: past a few thousand, activations spill out of the
    # caches and larger batches run slower per image (on 2 cores: 4-16 images per forward judged
    # about twice as fast per image as 64). None: one forward for everything (GPUs).
    cpu_forward_tokens: int | None = 2048

    def answer_token_logprobs(
        self, images, questions: list[str], answers: list[str], eos: bool = True, counts: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs [A, S] of each answer token given image and question, and the answer mask.

        Image i with question i is followed by `counts[i]` consecutive answers (default one): the
        image + question prefix runs once, and that image's answers are packed one after another
        into a single row behind it, each attending to the prefix and to its own earlier tokens
        only (a block mask; positions restart after the prefix for every answer). So many captions
        per image cost one row, with no copy of the prefix's cache per caption. Prompt and answers
        are tokenised apart, so an answer's tokens are exactly the tokenizer's tokens of it (plus
        <eos> when `eos`). On CPU the images go through in chunks of about `cpu_forward_tokens`.
        """
        counts = [1] * len(questions) if counts is None else list(counts)
        if len(counts) != len(questions) or sum(counts) != len(answers):
            raise ValueError("answers must hold counts[i] answers for each image/question i")
        eos_id = [self.tokenizer.eos_token_id] if eos else []
        seqs = [a + eos_id for a in self.token_ids(list(answers), special=False)]
        prefixes = [und_text(self.image_block, q) for q in questions]
        return self._packed_logprobs(images, prefixes, seqs, counts)

    def dialogue_token_logprobs(
        self, images, turns: list[tuple[str, str]], counts: list[int], eos: list[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs [T, S] of the answer tokens of (question, answer) turns about images, and the answer mask.

        Image i is asked `counts[i]` consecutive turns; each turn reads exactly as `und_text(image,
        question)` followed by its answer (and <eos> where `eos` says, default everywhere), but the
        image runs once and its turns are packed behind it, each seeing the image and itself only
        (as `answer_token_logprobs` packs answers). So one image answers several questions (a
        caption, the yes/no question of its prompt and of a negative) for about the cost of one.
        The question's tokens are read, not scored: only the answer's log-probs come back."""
        if len(counts) != len(images) or sum(counts) != len(turns):
            raise ValueError("turns must hold counts[i] turns for each image i")
        eos = [True] * len(turns) if eos is None else eos
        head = f"{USER}: {self.image_block}"  # ends in a special token, so the turn tokenises as in und_text
        asked = self.token_ids([und_text(self.image_block, q)[len(head) :] for q, _ in turns], special=False)
        said = self.token_ids([a for _, a in turns], special=False)
        eos_id = self.tokenizer.eos_token_id
        seqs = [q + a + [eos_id] * e for q, a, e in zip(asked, said, eos)]
        logp, mask = self._packed_logprobs(images, [head] * len(images), seqs, list(counts))
        # keep the answers' columns only, shifted to the left edge
        width = max((len(s) - len(q) for s, q in zip(seqs, asked)), default=0)
        first = torch.tensor([len(q) for q in asked], device=logp.device)
        cols = (first[:, None] + torch.arange(width, device=logp.device)).clamp(max=max(logp.shape[1] - 1, 0))
        keep = torch.arange(width, device=logp.device)[None, :] < (mask.sum(-1) - first)[:, None]
        return logp.gather(1, cols) * keep, keep

    def _packed_logprobs(
        self, images, prefixes: list[str], seqs: list[list[int]], counts: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs [A, S] of token sequences packed behind image prefixes (`counts[i]` behind prefix i),
        and their mask; the images go through in chunks on CPU."""
        tok = self.tokenizer
        width = max(map(len, seqs), default=0)
        ans = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        amask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for a, ids_a in enumerate(seqs):  # right-padded: padding after an answer never changes it
            ans[a, : len(ids_a)] = torch.tensor(ids_a, dtype=torch.long)
            amask[a, : len(ids_a)] = True
        ans, amask = ans.to(self.device), amask.to(self.device)
        if width == 0:
            return torch.zeros(len(seqs), 0, device=self.device), amask
        first_answer = np.concatenate([[0], np.cumsum(counts)])
        answer_tokens = [sum(map(len, seqs[first_answer[i] : first_answer[i + 1]])) for i in range(len(counts))]
        logp = torch.zeros(
            len(seqs), width, device=self.device, dtype=torch.promote_types(self.model.dtype, torch.float32)
        )
        for chunk in self._chunks(prefixes, answer_tokens):
            rows = [a for i in chunk for a in range(first_answer[i], first_answer[i + 1])]
            part = images[chunk] if isinstance(images, (np.ndarray, torch.Tensor)) else [images[i] for i in chunk]
            logp[rows] = self._packed_answer_logprobs(
                part, [prefixes[i] for i in chunk], ans[rows], amask[rows], [counts[i] for i in chunk]
            )
        return logp * amask, amask

    def _chunks(self, prefixes: list[str], answer_tokens: list[int]) -> list[list[int]]:
        """Groups of image indices to run one forward each: all at once off CPU; on CPU, images
        sorted by length (so packed rows of one forward have similar lengths and little padding)
        and grouped while the padded forward stays within about `cpu_forward_tokens` tokens."""
        budget = self.cpu_forward_tokens if self.device.type == "cpu" else None
        if not budget or len(prefixes) <= 1:
            return [list(range(len(prefixes)))]
        prefix = [len(x) for x in self.token_ids(prefixes)]
        order = sorted(range(len(prefixes)), key=lambda i: (prefix[i] + answer_tokens[i], i))
        out, group, longest = [], [], 0
        for i in order:
            size = prefix[i] + answer_tokens[i]
            if group and (len(group) + 1) * max(longest, size) > budget:
                out.append(group)
                group, longest = [], 0
            group.append(i)
            longest = max(longest, size)
        return out + [group]

    def _packed_answer_logprobs(self, images, prefixes, ans, amask, counts) -> torch.Tensor:
        """Log-probs [A, W] of the packed tokens of one chunk of images (see `answer_token_logprobs`)."""
        ids, mask = self._tokenize(prefixes)
        cache = DynamicCache(config=self.model.config.text_config)
        first = self.model(
            input_ids=ids,
            pixel_values=self.pixel_values(images),
            attention_mask=mask,
            position_ids=positions(mask),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        ans, amask = ans.cpu(), amask.cpu()
        n_ans, width = ans.shape
        # Packed layout: row i holds image i's answers back to back; `seg` numbers the answer a
        # packed token belongs to (-1: padding), `off` its place in that answer.
        owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
        lengths = amask.sum(-1)
        fill = torch.zeros(len(counts), dtype=torch.long).index_add_(0, owner, lengths)
        starts = torch.cumsum(lengths, 0) - lengths - (torch.cumsum(fill, 0) - fill)[owner]  # offset in its row
        span = max(int(fill.max()), 1)
        packed = torch.full((len(counts), span), self.tokenizer.pad_token_id, dtype=torch.long)
        seg = torch.full((len(counts), span), -1, dtype=torch.long)
        off = torch.zeros((len(counts), span), dtype=torch.long)
        rows, cols = owner[:, None].expand(-1, width)[amask], (starts[:, None] + torch.arange(width))[amask]
        packed[rows, cols] = ans[amask]
        seg[rows, cols] = torch.arange(n_ans)[:, None].expand(-1, width)[amask]
        off[rows, cols] = torch.arange(width).expand(n_ans, -1)[amask]
        causal = torch.arange(span)[None, :] <= torch.arange(span)[:, None]  # [query, key]
        own = (seg[:, :, None] == seg[:, None, :]) & causal & (seg[:, None, :] >= 0)
        own |= torch.eye(span, dtype=torch.bool)  # padding attends to itself: never a row without keys
        prefix = mask.bool().cpu()[:, None, :].expand(-1, span, -1)
        attn = torch.cat([prefix, own], -1)[:, None].to(self.device)  # [images, 1, span, prefix + span]
        pos = (positions(mask)[:, -1:].cpu() + 1 + off).to(self.device)
        logits = self.model(
            input_ids=packed.to(self.device), attention_mask=attn, position_ids=pos, cache=cache, use_cache=True
        ).logits
        # The prefix predicts every answer's first token; token k > 0 is predicted at packed place start + k - 1.
        pred = torch.cat([first[:, None], logits], 1)  # [images, 1 + span, V]
        k = torch.arange(width)[None, :]
        where = torch.where(amask & (k > 0), starts[:, None] + k, torch.zeros_like(k))
        logp = F.log_softmax(full_precision(pred), -1)
        return logp[owner[:, None].to(self.device), where.to(self.device), ans.to(self.device)]

    def answer_logprobs(
        self, images, questions: list[str], answers: list[str], eos: bool = True, counts: list[int] | None = None
    ) -> torch.Tensor:
        """Summed log-prob [A] of each answer (see `answer_token_logprobs`)."""
        return self.answer_token_logprobs(images, questions, answers, eos, counts)[0].sum(-1)

    def next_token_logits(self, images, questions: list[str], answer_prefix: str = "") -> torch.Tensor:
        """Logits [B, V] of the token after `answer_prefix`, in one forward pass."""
        texts = [und_text(self.image_block, q) + (" " + answer_prefix if answer_prefix else "") for q in questions]
        ids, mask = self._tokenize(texts)
        out = self.model(
            input_ids=ids,
            pixel_values=self.pixel_values(images),
            attention_mask=mask,
            position_ids=positions(mask),
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    @torch.no_grad()
    def generate_answer(self, images, questions: list[str], max_new_tokens: int = 12) -> list[str]:
        ids, mask = self._tokenize([und_text(self.image_block, q) for q in questions])
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=self.pixel_values(images),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
