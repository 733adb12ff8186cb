"""What the lesson notebooks use: the model a lesson runs, its self-checking claims, the
exercise checkers, and the command that executes every lesson and regenerates figures/.
"""
