"""Data for the stages: the step stream each worker reads (Ray Data) and the web-pairs converter."""
