from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL_RECORDING = ROOT.parent / "shared" / "data" / "so101-real-pickplace"  # CI has it; users do not
