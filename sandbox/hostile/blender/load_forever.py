# Loops while the scene is being built (in prepare, before any frame).
while True:
    pass
