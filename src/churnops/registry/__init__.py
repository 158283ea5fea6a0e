"""Registry: model versions and aliases in MLflow, with an audit log of every alias move."""
