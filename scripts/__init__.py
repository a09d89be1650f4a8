"""The project's developer scripts; a package so that ``scripts.doc_providers`` imports by one name everywhere."""
