"""The bimanual ALOHA Single-Insertion domain (Section 4.1.3, Appendix D.3), in MuJoCo.

scene: the MJCF scene, joint conventions and cameras; tasks: sampling, instruction, success;
env: the vectorized environment; demonstrator: the scripted mocap demonstrator.
"""
