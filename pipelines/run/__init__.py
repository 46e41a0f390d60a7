"""A run's start: Ray (local or a cluster), the cluster's fit for the workers, the run's config and data, its logs."""
