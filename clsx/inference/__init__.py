"""Texts to decisions: the classifier, encoding, long texts, scheduling, decision rules, runners."""
