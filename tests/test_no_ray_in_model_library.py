"""unip2 is pure PyTorch: importing the library and every task must not import Ray."""

import subprocess
import sys


def test_import_unip2_imports_no_ray():
    code = ("import sys, unip2, unip2.tasks, unip2.optim, unip2.persistence, unip2.data.synthetic; "
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
