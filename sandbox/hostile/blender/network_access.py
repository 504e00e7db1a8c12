import socket


def dcp_datum(scene, address):
    connection = socket.create_connection((address[0], address[1]), timeout=2)
    connection.sendall(b"escaped")
    return "connected"
