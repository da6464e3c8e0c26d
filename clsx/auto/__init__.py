"""``--backend auto``: the dtype and format chosen by measuring."""
