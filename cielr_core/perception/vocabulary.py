"""The label vocabulary OWLv2 queries on every image (implemented in :mod:`cielr_core.vocabulary`,
which the config's digest uses without importing the perception models)."""

from cielr_core.vocabulary import BUILTIN, load_vocabulary, merge_queries, vocabulary_digest

__all__ = ["BUILTIN", "load_vocabulary", "merge_queries", "vocabulary_digest"]
