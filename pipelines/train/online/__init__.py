"""Online evaluation of a pretraining run (the ``monitor:`` section).

``settings`` (the section and its checks), ``subsets`` (the labelled images
held in memory and their embedding across ranks), ``linear`` (the online
linear classifier), ``hook`` (the training hook that measures and alarms).
"""
