"""The synthetic phantom behind `silr synth`: anatomy, poses and a cone-beam projector."""
