"""The twins and their simulator: twin specs and fleets, CartPole physics, the vector env (no torch)."""
