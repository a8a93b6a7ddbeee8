"""Example plugins built with the SDK only."""
