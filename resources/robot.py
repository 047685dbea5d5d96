"""The robot a deployment evaluates on: `sim` (the USD twin, what the `eval_report` asset runs) or a real SO-101
follower via lerobot (interactive: `twinloop eval --robot so101_follower`; its port and calibration are in params
`eval.real`)."""


from typing import Literal

import dagster as dg


class RobotConnection(dg.ConfigurableResource):
    kind: Literal["sim", "so101_follower"] = "sim"
    port: str = ""  # serial port of a real follower, e.g. /dev/ttyACM0
    robot_id: str = "twinloop_follower"  # lerobot calibration id
    max_relative_target: float = 10.0  # lerobot's per-step clamp, always on for real arms

    def describe(self) -> str:
        if self.kind == "sim":
            return "the USD twin (sim proxy): models/twin/twin.usd stepped by MuJoCo"
        if not self.port:
            raise ValueError("robot.kind is so101_follower but robot.port is empty: set the follower's serial port")
        return f"real SO-101 follower on {self.port} (calibration id {self.robot_id})"
