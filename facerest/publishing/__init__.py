"""Publishing what the server saw to the outside (issue 31): MQTT, a listener of the event stream."""
