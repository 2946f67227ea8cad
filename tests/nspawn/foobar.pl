# foobar, the TCP-only service of foobar.service (perl is in every Debian):
# listens on 127.0.0.1:8080, sends READY=1, greets each client, then echoes.
# After a client that sent only "linger" has ended its sending, foobar keeps
# the connection half-closed until /tmp/release exists, then says "released".
use strict; use warnings;
use IO::Socket::INET; use IO::Socket::UNIX; use Socket;
my $server = IO::Socket::INET->new(LocalAddr => "127.0.0.1:8080", Listen => 64, ReuseAddr => 1)
    or die "listen on 127.0.0.1:8080: $!";
if (my $path = $ENV{NOTIFY_SOCKET}) {
    my $notify = IO::Socket::UNIX->new(Type => SOCK_DGRAM, Peer => $path) or die "notify: $!";
    $notify->send("READY=1");
}
$SIG{CHLD} = "IGNORE";
while (1) {
    my $client = $server->accept or next;
    if (fork() == 0) {
        syswrite $client, "hello from foobar\n";
        my $got = "";
        while (sysread($client, my $buffer, 65536)) {
            syswrite $client, $buffer;
            $got .= $buffer if length($got) < 16;
        }
        if ($got eq "linger") {
            select(undef, undef, undef, 0.02) until -e "/tmp/release";
            syswrite $client, "released\n";
        }
        exit 0;
    }
    close $client;
}
