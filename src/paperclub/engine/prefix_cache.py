"""Automatic prefix caching: the K/V of token blocks that earlier requests computed, kept for later ones.

Chat requests repeat themselves: every request of a client starts with the same system prompt and chat template,
every turn of a conversation resends the turns before it, and load tests and agents resend whole prompts. A prompt
whose first tokens were seen before need not recompute their K/V: the cache copies them into the new sequence's
slot and the prefill runs over the rest only.

The cache is a trie of fixed-size token blocks (`block_size` tokens). A node is one block; its key is the block's
tokens, its parent the blocks before it, so a node stands for exactly one token prefix (no hashes, no collisions)
and holds that block's K/V for every layer, copied out of a slot. A lookup walks the trie along the prompt and
takes the longest chain of cached blocks, then as many first tokens of one more block as match, leaving at least
one prompt token to run (its logits give the first output token).

K/V at position p depend only on tokens 0..p, so a block's K/V are the same whichever request computed them.
With the engine's compiled CPU kernels they are the same to the bit (every token row is computed on its own:
`nn/kernels/block_cpu.cpp`), and a prefill that reuses cached blocks gives exactly the logits of a full one. On
other devices they agree to rounding only, as in other engines with prefix caching.

Memory is bounded (`max_bytes`). Eviction takes leaves only (a block is useless without the blocks before it)
and is segmented LRU: blocks never reused since they were stored (the output of a one-off request) go first, least
recently used first; blocks that served a lookup (a shared system prompt, the earlier turns of a conversation)
only when no such block is left.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import torch

from paperclub.engine.kv_cache import KVCache


@dataclass(eq=False)
class Block:
    tokens: tuple[int, ...]
    parent: Block | None
    k: torch.Tensor | None = None  # (layers, kv heads, block_size, head dim)
    v: torch.Tensor | None = None
    children: dict[tuple[int, ...], Block] = field(default_factory=dict)
    hits: int = 0
    last_used: int = 0


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, tokens whose K/V came from the cache
    stored_blocks: int = 0
    evicted_blocks: int = 0


class PrefixCache:
    def __init__(self, max_bytes: int, block_size: int = 16):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.max_bytes, self.block_size = max_bytes, block_size
        self.root = Block((), None)
        self.num_blocks = 0
        self.block_bytes = 0  # bytes of one block's K/V, known once the first is stored
        self.stats = PrefixCacheStats()
        self._clock = itertools.count(1)

    @property
    def nbytes(self) -> int:
        return self.num_blocks * self.block_bytes

    def _walk(self, tokens: list[int], limit: int) -> list[Block]:
        """The cached blocks along `tokens`, as long a chain as there is within the first `limit` tokens."""
        chain, node, B = [], self.root, self.block_size
        for start in range(0, limit - B + 1, B):
            node = node.children.get(tuple(tokens[start:start + B]))
            if node is None:
                break
            chain.append(node)
        return chain

    def load(self, prompt: list[int], cache: KVCache, slot: int) -> int:
        """Copy the K/V of the longest cached prefix of `prompt` (all but its last token at most) into positions
        0.. of `slot`. Returns how many tokens were copied: the prefill starts there.

        After the full blocks, the first tokens of a cached block count too: a resent prompt ends inside a block
        that its earlier reply completed, and position p's K/V do not depend on the tokens after p."""
        limit, B = len(prompt) - 1, self.block_size
        chain = self._walk(prompt, limit)
        self.stats.queries += len(prompt)
        n = len(chain) * B
        parent = chain[-1] if chain else self.root
        rest = prompt[n:min(limit, n + B)]
        best, tail = 0, None
        for child in parent.children.values():  # the child sharing the most of the rest of the prompt
            same = next((i for i, (a, b) in enumerate(zip(child.tokens, rest, strict=False)) if a != b),
                        len(rest))
            if same > best:
                best, tail = same, child
        if tail is not None:
            chain.append(tail)
        if not chain:
            return 0
        now = next(self._clock)
        for node in chain:
            node.hits += 1
            node.last_used = now
        n += best
        k = torch.cat([node.k for node in chain], dim=2)[:, :, :n]  # (layers, kv heads, n, head dim)
        v = torch.cat([node.v for node in chain], dim=2)[:, :, :n]
        for layer in range(len(cache.k)):
            cache.k[layer][slot, :, :n] = k[layer]
            cache.v[layer][slot, :, :n] = v[layer]
        self.stats.hits += n
        return n

    def store(self, tokens: list[int], cache: KVCache, slot: int) -> None:
        """Keep the full blocks of `tokens`, whose K/V are at positions 0.. of `slot`, that are not cached yet."""
        B = self.block_size
        chain = self._walk(tokens, len(tokens))
        start = len(chain) * B
        end = len(tokens) // B * B
        if end <= start or self.max_bytes <= 0:
            return
        # one copy out of the slot for all new blocks, then a block each (clones: evicting one frees its memory)
        k = torch.stack([cache.k[layer][slot, :, start:end] for layer in range(len(cache.k))])
        v = torch.stack([cache.v[layer][slot, :, start:end] for layer in range(len(cache.v))])
        parent = chain[-1] if chain else self.root
        now = next(self._clock)
        for i, s in enumerate(range(start, end, B)):
            key = tuple(tokens[s:s + B])
            node = Block(key, parent, k[:, :, i * B:(i + 1) * B].clone(), v[:, :, i * B:(i + 1) * B].clone(),
                         last_used=now)
            self.block_bytes = 2 * node.k.numel() * node.k.element_size()
            parent.children[key] = node
            parent = node
            self.num_blocks += 1
            self.stats.stored_blocks += 1
        self._evict(keep=parent)

    def _evict(self, keep: Block) -> None:
        """Drop leaves until the cache fits `max_bytes`: never-reused blocks first, then reused ones; LRU within
        each. `keep` (the block just stored) goes last of all. One walk over the trie, then a heap of leaves: a
        parent whose last child goes becomes a leaf itself."""
        if self.nbytes <= self.max_bytes:
            return

        def rank(b: Block) -> tuple:
            return (b is keep, b.hits > 0, b.last_used, id(b))

        heap = [(rank(b), b) for b in self._blocks() if not b.children]
        heapq.heapify(heap)
        while self.nbytes > self.max_bytes and heap:
            _, victim = heapq.heappop(heap)
            parent = victim.parent
            del parent.children[victim.tokens]
            victim.k = victim.v = None
            self.num_blocks -= 1
            self.stats.evicted_blocks += 1
            if parent is not self.root and not parent.children:
                heapq.heappush(heap, (rank(parent), parent))

    def _blocks(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
