"""Data shipped with wasap: Madelon (see MADELON_PROVENANCE.md)."""
