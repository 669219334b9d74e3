"""Model statistics: inspection, MACs, shape facts, coverage and reports."""
