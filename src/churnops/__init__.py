"""churnops: MLOps for customer-churn prediction."""
