"""What both web apps (serve, review) share: body limits, error answers, security, the server."""
