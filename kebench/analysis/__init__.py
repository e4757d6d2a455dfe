"""From result folders to what people read: tables (a package of table kinds, the table-kind extension
point and API), plots (figure kinds, their extension point and API),
report (a study's HTML/LaTeX/Markdown report) and study (a paper's table as one command; the study
files live in studies/)."""
