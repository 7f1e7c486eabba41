"""Hardware-in-the-loop support: PSP terminal simulator, charger simulator, benchmarks."""
