"""Run MedSeg's self-test inside Slicer without a window; the exit code says whether it passed.

    MEDSEG_SERVER_URL=http://127.0.0.1:8000 Slicer --no-splash --no-main-window \
        --additional-module-paths slicer_extension/MedSeg \
        --python-script slicer_extension/MedSeg/Testing/run_selftest.py

The test stores a final label on that server: point it at a test server.
"""
import os
import sys
import traceback

import slicer

# The module folder on sys.path, also when Slicer was started without --additional-module-paths.
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

import MedSeg  # noqa: E402

exit_code = 1
try:
    MedSeg.MedSegTest().runTest()
    print("MedSeg self-test passed")
    exit_code = 0
except Exception:
    traceback.print_exc()
    print("MedSeg self-test FAILED")
finally:
    sys.stdout.flush()
slicer.util.exit(exit_code)
