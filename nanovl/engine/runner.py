"""The one object that owns torch in the reference engine: the Llama forward over a paged KV cache.

Weights and layer modules are transformers' LlamaForCausalLM (norms, projections, MLP, RoPE); what is ours
is the attention over the paged cache, so that one forward serves every sequence of a step: projections and
MLPs run on all the step's tokens at once, attention reads each sequence's own blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ..core.checkpoint import CheckpointConfig, load_llm, torch_dtype
from .blocks import BlockManager
from .scheduler import Sequence, Step


@dataclass
class _Plan:
    """Index tensors of one step, built once and used by every layer."""

    slots: torch.Tensor                    # [T] pool slot of each token run this step
    prefill_spans: list[tuple[int, int]]   # token range of each prefill in the step
    prefill_context: list[torch.Tensor]    # [ctx] slots of each prefill's whole context
    decode_start: int                      # first token of the decode part (one token per sequence)
    decode_index: torch.Tensor | None      # [B, L] context slots of each decode, padded
    decode_valid: torch.Tensor | None      # bool [B, L]
    last: torch.Tensor                     # [n_seqs] index of each sequence's last token


class ModelRunner:
    def __init__(self, config: CheckpointConfig, *, kv_cache_tokens: int, block_size: int = 16,
                 dtype: str | None = None, device: str = "cpu", prefix_caching: bool = True):
        self.config = config
        self.device = torch.device(device)
        self.model = load_llm(config, dtype=dtype, device=device)
        llm = self.model.config
        self.num_heads = llm.num_attention_heads
        self.num_kv_heads = llm.num_key_value_heads
        self.head_dim = getattr(llm, "head_dim", None) or llm.hidden_size // llm.num_attention_heads
        self.blocks = BlockManager(max(1, kv_cache_tokens // block_size), block_size, caching=prefix_caching)
        shape = (llm.num_hidden_layers, self.blocks.num_blocks * block_size, 2, self.num_kv_heads, self.head_dim)
        # K and V side by side: [layers, slots, 2, kv_heads, head_dim], so one gather reads both. Written
        # through at start (not calloc's lazy zero pages), so the process holds its KV memory from the first
        # request on instead of growing into it (docs/reliability.md, soak).
        self.kv_pool = torch.empty(shape, dtype=torch_dtype(dtype or config.torch_dtype), device=self.device)
        self.kv_pool.fill_(0)
        self.block_bytes = self.kv_pool.nbytes // self.blocks.num_blocks
        self._offsets = torch.arange(block_size, device=self.device)

    def _context_slots(self, seq: Sequence, length: int) -> torch.Tensor:
        table = torch.tensor(self.blocks.tables[seq.key], dtype=torch.long, device=self.device)
        return (table[:, None] * self.blocks.block_size + self._offsets[None]).reshape(-1)[:length]

    def _decode_context(self, seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (slots [B, L] of each sequence's context, padded; valid bool [B, L]), from one padded block
        table: one tensor built per step instead of one per sequence."""
        tables = [self.blocks.tables[seq.key] for seq in seqs]
        width = max(len(t) for t in tables)
        table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=self.device)
        index = (table[:, :, None] * self.blocks.block_size + self._offsets).reshape(len(seqs), -1)
        lengths = torch.tensor([seq.length for seq in seqs], device=self.device)
        longest = int(lengths.max())
        valid = torch.arange(longest, device=self.device)[None] < lengths[:, None]
        return index[:, :longest], valid

    def _inputs(self, step: Step) -> tuple[torch.Tensor, torch.Tensor, _Plan]:
        """-> (hidden [T, hidden], positions [T], plan)."""
        ids, positions, slots, spans, contexts = [], [], [], [], []
        images = []   # per prompt with images: (token indices in the step, its prompt table, table rows)
        vocab = self.config.vocab_size
        for seq in step.prefills:
            prompt = seq.request.prompt_ids
            tokens = [int(t) for t in prompt[seq.cached:]] + seq.output_ids[max(0, seq.cached - len(prompt)):]
            at = [i for i, t in enumerate(tokens) if t >= vocab]
            if at:
                images.append(([len(ids) + i for i in at], seq.request.prompt_table, [tokens[i] - vocab for i in at]))
            context = self._context_slots(seq, seq.length)
            spans.append((len(ids), len(ids) + len(tokens)))
            contexts.append(context)
            slots.append(context[seq.cached:])
            ids += tokens
            positions += range(seq.cached, seq.length)
        decode_start = len(ids)
        decode_index = decode_valid = None
        if step.decodes:
            decode_index, decode_valid = self._decode_context(step.decodes)
            lengths = [seq.length for seq in step.decodes]
            ids += [seq.output_ids[-1] for seq in step.decodes]
            positions += [n - 1 for n in lengths]
            slots.append(decode_index[torch.arange(len(lengths)), torch.tensor(lengths) - 1])
        ids_t = torch.tensor(ids, dtype=torch.long, device=self.device)
        hidden = self.model.model.embed_tokens(ids_t.clamp(max=vocab - 1))
        for index, table, rows in images:   # image positions take their rows of the prompt embedding table
            if table is None or max(rows) >= len(table):
                raise ValueError("prompt ids reference image rows the prompt table does not have")
            # One host-to-device copy per prompt: a row at a time was 3,328 copies for one 13-tile image.
            hidden[torch.tensor(index, device=self.device)] = torch.as_tensor(table[rows]).to(self.device, hidden.dtype)
        last = [end - 1 for _, end in spans] + list(range(decode_start, len(ids)))
        plan = _Plan(torch.cat(slots), spans, contexts, decode_start, decode_index, decode_valid,
                     torch.tensor(last, device=self.device))
        return hidden, torch.tensor(positions, device=self.device), plan

    @torch.inference_mode()
    def forward(self, step: Step) -> torch.Tensor:
        """Runs every token of the step and writes their K/V. -> logits float [n_seqs, vocab], prefills first."""
        hidden, positions, plan = self._inputs(step)
        cos, sin = self.model.model.rotary_emb(hidden[None], positions[None])
        t = hidden.shape[0]
        for index, layer in enumerate(self.model.model.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(1, t, self.num_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            v = attn.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
            self.kv_pool[index, plan.slots] = torch.stack([k[0].transpose(0, 1), v], dim=1)
            hidden = hidden + attn.o_proj(self._attention(q[0], index, plan))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(self.model.model.norm(hidden[plan.last])).float()

    def _attention(self, q: torch.Tensor, layer: int, plan: _Plan) -> torch.Tensor:
        """q: [heads, T, head_dim] -> [T, heads * head_dim]."""
        out = torch.empty(q.shape[1], self.num_heads, self.head_dim, dtype=q.dtype, device=self.device)
        pool = self.kv_pool[layer]
        for (start, end), context in zip(plan.prefill_spans, plan.prefill_context):
            kv = pool[context].permute(1, 2, 0, 3)   # [2, kv_heads, ctx, d]
            k, v = kv[0][None], kv[1][None]
            causal = end - start == len(context)   # a whole prompt; else the queries end the context
            o = F.scaled_dot_product_attention(q[None, :, start:end], k, v, is_causal=causal, enable_gqa=True,
                                               attn_mask=None if causal else _causal_mask(end - start, len(context), self.device))
            out[start:end] = o[0].transpose(0, 1)
        if plan.decode_index is not None:
            kv = pool[plan.decode_index].permute(2, 0, 3, 1, 4)   # [2, B, kv_heads, L, d]
            k, v = kv[0], kv[1]
            qd = q[:, plan.decode_start:].transpose(0, 1)[:, :, None]   # [B, heads, 1, d]
            o = F.scaled_dot_product_attention(qd, k, v, attn_mask=plan.decode_valid[:, None, None], enable_gqa=True)
            out[plan.decode_start:] = o[:, :, 0]
        return out.reshape(q.shape[1], -1)


def _causal_mask(queries: int, keys: int, device) -> torch.Tensor:
    """bool [queries, keys]: query i sees keys up to keys - queries + i (queries end the context)."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)
