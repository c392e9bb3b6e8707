"""Tree verification: check several draft continuations in one target forward, keep the longest that holds.

A round of chain SD verifies one guess of K tokens. A tree round verifies several (prompt-lookup matches from
different places in the context, the draft's chain from each of its top-w first tokens), merged into a trie so
that guesses sharing a prefix share its nodes:

    root = the last emitted token (already sampled, not yet in the cache)
    node i: token t_i, parent p_i (-1 = the root), depth 1..K; parents come before their children

The target reads [root, t_1, ..., t_N] in one forward. Node i's K/V is written at cache index start + 1 + i (the
root at `start`), its rope position is start + depth_i, and it attends to the cached prefix [0, start) plus its
own ancestors and itself (a tree mask; `tree_meta`). The target's logits at node i are therefore exactly its
next-token logits after prefix + the path to i, as if that path had been decoded one token at a time.

Greedy acceptance (`verify_greedy_tree`): from the root, follow the child whose token equals the target's argmax
at the current node, as long as one exists; then emit the argmax at the last node reached. Every emitted token
is the target's argmax after the tokens before it, so the output is token for token AR's (exact, like chain SD
at temperature 0). Sampled requests use chain verification (`verify.py`), whose rule is exact for one guess.

The accepted nodes' K/V sit at their tree indices; `compact` moves them to start + 1, start + 2, ... so that the
slot holds the sequence contiguously again (indices only grow along a path, so the copy never overwrites a source
still needed). Whatever else the tree wrote past the new length is garbage that later writes overwrite.

Why it pays on a CPU: a decode step at batch 1 streams every weight once whatever the number of rows, so
verifying 20-30 tree nodes costs little more than verifying 6; the measured step time as a function of rows
decides (`cost_model`), and where it does not pay the engine keeps chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paperclub.engine.kv_cache import KVCache, slot_range
from paperclub.engine.sampling import greedy_tokens
from paperclub.models.llama import AttentionMeta


@dataclass
class TokenTree:
    """A trie of draft tokens below the root (the last emitted token)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # -1: a child of the root
    depths: list[int] = field(default_factory=list)  # 1 for the root's children
    sources: list[str] = field(default_factory=list)  # who proposed each node first ("ngram", "draft")
    drafted: bool = False  # whether the draft model ran for this tree (else n-gram guesses only)
    _children: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)  # (parent, token) -> node

    def __len__(self) -> int:
        return len(self.tokens)

    def add_chain(self, chain: list[int], source: str = "draft") -> None:
        """Insert one guess (the tokens that would follow the root); shared prefixes are merged."""
        parent = -1
        for t in chain:
            node = self._children.get((parent, t))
            if node is None:
                node = len(self.tokens)
                self.tokens.append(int(t))
                self.parents.append(parent)
                self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
                self.sources.append(source)
                self._children[(parent, t)] = node
            parent = node

    def child(self, parent: int, token: int) -> int | None:
        return self._children.get((parent, token))

    def path(self, node: int) -> list[int]:
        """Nodes from the root's child down to `node`."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)


def build_tree(chains: list[tuple[list[int], str]]) -> TokenTree:
    """A trie from (guess, source) pairs, in order (earlier guesses name the shared nodes' source)."""
    tree = TokenTree()
    for chain, source in chains:
        tree.add_chain(chain, source)
    return tree


def tree_meta(trees: list[TokenTree], roots: list[int], starts: list[int], slots: list[int], device
              ) -> tuple[torch.Tensor, torch.Tensor, AttentionMeta]:
    """Tokens (B, T), rope positions (B, T) and attention metadata for one forward over [root, tree nodes] of
    each row (rows padded to the largest tree; a padding token sits past its row's nodes and sees only the
    prefix and itself, so it never produces NaN and nothing reads it)."""
    B = len(trees)
    T = 1 + max(len(t) for t in trees)
    tokens = torch.zeros(B, T, dtype=torch.long)
    depth = torch.zeros(B, T, dtype=torch.long)
    start = torch.tensor(starts, dtype=torch.long)
    write = start[:, None] + torch.arange(T)[None, :]  # (B, T): token j of row b at index start_b + j
    S = int(write.max()) + 1
    mask = (torch.arange(S)[None, None, :] < start[:, None, None]).repeat(1, T, 1)  # (B, T, S): the cached prefix
    for b, tree in enumerate(trees):
        n = len(tree)
        tokens[b, 0] = roots[b]
        if n:
            tokens[b, 1: n + 1] = torch.tensor(tree.tokens)
            depth[b, 1: n + 1] = torch.tensor(tree.depths)
        sees = [[False] * T for _ in range(T)]  # sees[j][i]: token j attends to token i (root 0, node i - 1 at i)
        sees[0][0] = True
        for j in range(1, T):
            if j > n:
                sees[j][j] = True  # padding: prefix and itself only
            else:  # itself and what its parent sees (parents come first)
                sees[j] = list(sees[tree.parents[j - 1] + 1])
                sees[j][j] = True
        mask[b, :, starts[b]: starts[b] + T] = torch.tensor(sees)
    positions = start[:, None] + depth
    meta = AttentionMeta(slots=torch.tensor(slots, device=device), write_index=write.to(device), kv_len=S,
                         mask=mask[:, None].to(device), slot_range=slot_range(slots))
    return tokens.to(device), positions.to(device), meta


@dataclass
class TreeVerdict:
    paths: list[list[int]]  # per row: the accepted nodes, root's child first
    next_token: list[int]  # per row: the target's argmax after the last accepted node (or after the root)

    def emitted(self, trees: list[TokenTree]) -> list[list[int]]:
        return [[tree.tokens[i] for i in path] + [t]
                for tree, path, t in zip(trees, self.paths, self.next_token, strict=True)]


def verify_greedy_tree(trees: list[TokenTree], logits: torch.Tensor) -> TreeVerdict:
    """logits (B, T, V) at [root, nodes...] -> per row the longest path of nodes that equal the target's argmax."""
    B, T, V = logits.shape
    argmax = greedy_tokens(logits.reshape(B * T, V)).view(B, T).tolist()
    paths, nxt = [], []
    for tree, g in zip(trees, argmax, strict=True):
        path, node = [], -1
        while True:
            child = tree.child(node, g[node + 1])
            if child is None:
                break
            path.append(child)
            node = child
        paths.append(path)
        nxt.append(g[node + 1])
    return TreeVerdict(paths, nxt)


def compact(cache: KVCache, slot: int, start: int, path: list[int]) -> None:
    """Move the K/V of the accepted nodes (tree indices start + 1 + node) to start + 1, start + 2, ..."""
    src = [start + 1 + node for node in path]
    dst = list(range(start + 1, start + 1 + len(path)))
    if src == dst:
        return
    device = cache.k[0].device
    s, d = torch.tensor(src, device=device), torch.tensor(dst, device=device)
    for layer in cache.k + cache.v:
        layer[slot].index_copy_(1, d, layer[slot].index_select(1, s))  # (heads, positions, head_dim)
