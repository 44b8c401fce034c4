"""Structure of a transition graph (which `P[s, s'] > 0`): host-side, on concrete arrays.

The one home of the graph questions that validation asks (docs/design.md §4): the closed
(recurrent) classes of a chain, the period of a class, and which states reach a target
set. Values never matter here, only the support, so every function takes any array whose
positive entries are the edges (or a `dsorl.sparse.SparseTransitions`, whose `support()`
gives them). These run in NumPy/SciPy on concrete input only; the jittable structural
test is `dsorl.markov.is_unichain`.
"""
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

__all__ = ["closed_classes", "period", "reaches", "action_support"]


def closed_classes(P) -> list:
    """Closed communicating (recurrent) classes of the chain `P[S, S]`, as arrays of states.

    Strongly connected components of the support graph with no edge leaving them
    (Puterman 1994, §A.2). One class: unichain; several: multichain.
    """
    graph = _support(P)
    src, dst = graph.nonzero()
    n, labels = scipy.sparse.csgraph.connected_components(graph, directed=True,
                                                          connection="strong")
    leaks = np.zeros(n, bool)
    leaks[labels[src][labels[src] != labels[dst]]] = True
    return [np.flatnonzero(labels == c) for c in range(n) if not leaks[c]]


def period(P, states) -> int:
    """Period of the closed class `states` of `P`: the gcd of `level(u) + 1 - level(v)`
    over its edges `u -> v`, with BFS levels from its first state (1: aperiodic)."""
    states = np.asarray(states)
    sub = _support(P)[states][:, states].tocsr()
    level = scipy.sparse.csgraph.breadth_first_order(sub, 0, directed=True,
                                                     return_predecessors=True)
    order, parent = level
    level = np.full(len(states), -1)
    level[0] = 0
    for v in order[1:]:  # BFS order: a parent's level is set before its children's
        level[v] = level[parent[v]] + 1
    src, dst = sub.nonzero()
    return int(np.gcd.reduce(np.abs(level[src] + 1 - level[dst])))


def _support(P):
    """The edges `P[s, s'] > 0` as a `[S, S]` CSR matrix (dense array or sparse kernel)."""
    if hasattr(P, "support"):
        return P.support()
    if scipy.sparse.issparse(P):
        return scipy.sparse.csr_matrix(P)
    src, dst = np.nonzero(np.asarray(P) > 0)
    return scipy.sparse.csr_matrix((np.ones(src.size, np.int8), (src, dst)), shape=np.shape(P))


def reaches(P, target) -> np.ndarray:
    """Which states reach the set `target[S]` (bool) along `P > 0` edges, `[S]` bool.

    A backward search from `target`; the rows of target states are ignored (an episode
    ends there)."""
    P, target = np.asarray(P), np.asarray(target, bool)
    edges = (P > 0) & ~target[:, None]
    reach = target.copy()
    while True:
        new = reach | (edges & reach[None, :]).any(axis=1)
        if (new == reach).all():
            return reach
        reach = new


def action_support(P, action_mask=None) -> np.ndarray:
    """`[S, S]` bool: the edges of a policy that uses every available action of the MDP
    `P[S, A, S]` (every softmax or sigmoid policy has exactly this support); a CSR matrix
    of them for a sparse kernel."""
    if hasattr(P, "masked"):  # a sparse kernel: its masked support, as a CSR matrix
        mask = None if action_mask is None else np.asarray(action_mask, bool)
        return P.masked(mask).support()
    P = np.asarray(P)
    allowed = np.ones(P.shape[:2], bool) if action_mask is None else np.asarray(action_mask, bool)
    return (P * allowed[..., None]).sum(axis=1) > 0
