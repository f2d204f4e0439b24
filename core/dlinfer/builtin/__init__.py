"""Built-in plugins: core behaviour registered through the public hooks."""
