# perl client.pl ADDRESS MESSAGE: sends MESSAGE to ADDRESS (a socket path or
# HOST:PORT), half-closes, prints the reply; exit 3 if it cannot connect.
use strict; use warnings;
use IO::Socket::INET; use IO::Socket::UNIX; use Socket;
my ($address, $message) = @ARGV;
my $socket = $address =~ m{/}
    ? IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $address)
    : IO::Socket::INET->new(PeerAddr => $address, Timeout => 5);
$socket or do { print STDERR "connect $address: $!\n"; exit 3 };
syswrite $socket, $message;
shutdown $socket, 1;
my $reply = "";
while (sysread($socket, my $buffer, 65536)) { $reply .= $buffer }
print $reply;
