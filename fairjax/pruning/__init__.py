"""Pruning methods: criteria that turn (params, data) into scores, and selections into masks.

- :mod:`fairjax.pruning.fairprune`: FairPrune saliency (design.md section 2).

Scores follow one convention across methods: higher = more important = kept; selection is the
shared :func:`fairjax.masks.prune_lowest` unless a method needs its own.
"""
