"""Hardware behind small interfaces: lighting buses (DALI, Modbus) come with the lighting work.

Cameras are read through OpenCV in ``agent.vision.camera``; nothing here yet.
"""
