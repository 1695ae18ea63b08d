"""Throwaway network-namespace labs: the only place harden loads rules in tests and demos."""
