"""The probe engine: transports, the capture, and the round engine that drives them."""
