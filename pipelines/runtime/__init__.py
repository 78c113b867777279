"""Where and how a process runs: distributed environment, seeding, stop signals, engines."""
