"""Lowerings of control flow (Loop, Scan, If) into straight-line graphs the rules can differentiate."""
