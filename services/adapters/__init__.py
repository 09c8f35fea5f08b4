"""Example adapters: one subpackage per adapter process (other languages sit beside them)."""
