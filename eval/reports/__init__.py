"""Reports: report.md / report.json, plots and terminal tables of every evaluation."""
