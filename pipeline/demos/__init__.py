"""Stage `demos`: the LeRobot v3.0 demonstrations, their quality checks and the inbox that grows them (docs/demos.md)."""
