"""Tools that drive the service from outside, as an app would: the demo traffic and the
replay of evaluation results, sent through the SDK (and set up through app.services)."""
