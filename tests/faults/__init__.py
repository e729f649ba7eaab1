"""The fault matrix: each scenario against a fresh 3-member cluster and the real daemons.

Run alone with ``pytest -m fault``; ``scripts/fault_table.py`` prints the results table.
"""
