"""The Adapt tab: adapting a frozen backbone (LAST, MIET and the baselines)."""
