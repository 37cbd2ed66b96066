"""Experiment trackers for train.py's log: TensorBoard, Weights & Biases or Trackio
(`--report_to`), beside the run's own log.jsonl. tracking/trackers.py."""
