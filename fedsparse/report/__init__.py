"""Results directories, tables and plots."""
