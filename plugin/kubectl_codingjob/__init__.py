"""`kubectl codingjob`: run, follow, watch and download CodingJobs from the command line.

Installed as the console script ``kubectl-codingjob``; kubectl runs any ``kubectl-*`` on the PATH
as a plugin (krew-style), so ``kubectl codingjob ls`` works once the package is installed.
"""
