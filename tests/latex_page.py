"""Compile LaTeX tables on a two-column paper's page with pdflatex and measure them (tests only)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

PDFLATEX = shutil.which("pdflatex")
SKIP_REASON = "pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-extra)"

# A CVPR/ICCV-like page: 6.875 in text, two columns; every tabular reports its natural width and
# every float the width of what it holds (after \resizebox), both in pt, on the terminal.
PREAMBLE = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[T1]{fontenc}
\usepackage[utf8]{inputenc}
\usepackage{booktabs,graphicx}
\usepackage[letterpaper,textwidth=6.875in,columnsep=0.3125in,textheight=9in]{geometry}
\newsavebox\kbtab
\let\kbtabular\tabular \let\kbendtabular\endtabular
\renewenvironment{tabular}{\begin{lrbox}{\kbtab}\kbtabular}{\kbendtabular\end{lrbox}%
  \typeout{KBTABULAR=\the\wd\kbtab}\usebox{\kbtab}}
\begin{document}
\typeout{KBTEXTWIDTH=\the\textwidth}\typeout{KBCOLUMNWIDTH=\the\columnwidth}
"""


def compile_tables(tex: str, folder: Path) -> dict:
    """Compile `tex` (one or more table environments); returns the measured widths in pt
    (`tabulars`, `textwidth`, `columnwidth`), the `overfull` box warnings and the `log`."""
    (folder / "page.tex").write_text(PREAMBLE + tex + "\n\\end{document}\n")
    out = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "page.tex"], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    log = (folder / "page.log").read_text(errors="replace") if (folder / "page.log").exists() else out.stdout
    assert out.returncode == 0, log[-3000:]
    number = r"([0-9.]+)pt"
    return {"tabulars": [float(x) for x in re.findall("KBTABULAR=" + number, log)],
            "textwidth": float(re.search("KBTEXTWIDTH=" + number, log).group(1)),
            "columnwidth": float(re.search("KBCOLUMNWIDTH=" + number, log).group(1)),
            "overfull": re.findall(r"Overfull \\hbox \(([0-9.]+)pt too wide\)", log), "log": log}
