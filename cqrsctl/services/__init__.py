"""Services: the operations the CLI offers, as plain functions over a store and an app."""
