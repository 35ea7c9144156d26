"""Hardware cost model (see the cost_model issue). Passes read it from ``PassContext.cost_model``."""
