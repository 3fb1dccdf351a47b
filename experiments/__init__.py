"""Reproducible experiments built on ernie_m_jax (each module has one driver)."""
