"""One self-contained file per backbone family; each reproduces one official checkpoint layout."""
